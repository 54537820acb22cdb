//! The tracing middleware of the HTTP API (installed unless `samplingRate` is `"0"`).
//!
//! Like daprd's: every request but the health endpoints gets a span, a child of the caller's
//! `traceparent` when it sent a valid one; the request's `traceparent` is replaced by the
//! span's so that invocation, publish and bindings propagate it; the answer carries a
//! `traceparent` when the handler did not set one. An invalid `baggage` header is refused
//! with 400; a valid one is echoed back.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use tandem_runtime::trace::{BAGGAGE, SpanKind, SpanName, TRACEPARENT, Tracer, valid_baggage};

/// The middleware function (`axum::middleware::from_fn_with_state`).
pub(crate) async fn layer(State(tracer): State<Tracer>, req: Request, next: Next) -> Response {
    if req.uri().path().contains("/healthz") {
        return next.run(req).await;
    }
    let baggage = match baggage(&req) {
        Ok(b) => b,
        Err(()) => {
            return (
                StatusCode::BAD_REQUEST,
                [
                    (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                ],
                "invalid baggage header\n",
            )
                .into_response();
        }
    };
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path();
    let span = tracer.start_from_headers(&mut parts.headers, SpanKind::Client, || {
        path.to_owned().into()
    });
    let Some(mut span) = span else {
        return next.run(Request::from_parts(parts, body)).await;
    };
    // The value written into the request, shared (not copied) by the answer.
    let traceparent = parts.headers.get(TRACEPARENT).cloned();
    let req = Request::from_parts(parts, body);
    let described = span
        .recording()
        .then(|| (req.method().clone(), req.uri().clone()));
    let mut resp = next.run(req).await;
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
    if !headers.contains_key(TRACEPARENT) {
        let value = traceparent.unwrap_or_else(|| span.context().header_value());
        headers.insert(TRACEPARENT, value);
    }
    if let Some(b) = baggage {
        headers.insert(BAGGAGE, b);
    }
    span.end();
    resp
}

/// The request's `baggage` (several headers joined), `Err` when invalid.
fn baggage(req: &Request) -> Result<Option<HeaderValue>, ()> {
    let mut values = req.headers().get_all(BAGGAGE).iter();
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
