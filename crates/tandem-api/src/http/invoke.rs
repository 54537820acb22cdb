//! Service invocation over HTTP: `/v1.0/invoke/{appId}/method/{method...}` (any verb), and
//! every request no other route matched, targeted by the `dapr-app-id` header or
//! `Authorization: Basic base64("dapr-app-id:<target>")`.
//!
//! The handler only finds the target and the method (daprd's `findTargetIDAndMethod`, in the
//! same priority order) and hands the streaming request to
//! [`tandem_runtime::invoke::InvokeService`]; the answer streams back as it comes.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::{HeaderMap, header};
use http_body_util::{BodyExt, Limited};
use percent_encoding::percent_decode_str;
use tandem_runtime::invoke::InvokeRequest;
use tandem_runtime::trace::SpanName;
use tandem_runtime::{ApiError, ErrorCode};

use super::ApiState;
use super::error::HttpError;

/// Where a request is going: the target and the raw (still escaped) method.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Destination {
    pub(crate) target: String,
    pub(crate) method: String,
}

/// `dapr-app-id`, named once rather than parsed from a string at every lookup.
const DAPR_APP_ID: http::HeaderName = http::HeaderName::from_static("dapr-app-id");

/// daprd's `findTargetIDAndMethod`: the `dapr-app-id` header, then Basic auth with user
/// `dapr-app-id`, then the `/v1.0/invoke/<target>/method/<method>` path.
pub(crate) fn destination(path: &str, headers: &HeaderMap) -> Option<Destination> {
    let whole_path = || with_room(path.trim_start_matches('/'));
    if let Some(id) = headers
        .get(&DAPR_APP_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
    {
        return Some(Destination {
            target: id.to_owned(),
            method: whole_path(),
        });
    }
    if let Some(target) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| BASE64.decode(b.trim()).ok())
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|pair| {
            let mut parts = pair.split(':');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(user), Some(target), None) if user.eq_ignore_ascii_case("dapr-app-id") => {
                    Some(target.to_owned())
                }
                _ => None,
            }
        })
        .filter(|t| !t.is_empty())
    {
        return Some(Destination {
            target,
            method: whole_path(),
        });
    }
    // `/v1.0/invoke/<target>/method/<method>`, tolerating repeated slashes like daprd's scan.
    let rest = path.trim_start_matches('/').strip_prefix("v1.0")?;
    let rest = rest
        .strip_prefix('/')?
        .trim_start_matches('/')
        .strip_prefix("invoke/")?
        .trim_start_matches('/');
    let at = method_marker(rest).filter(|at| *at > 0)?;
    let raw_target = &rest[..at];
    let target = percent_decode_str(raw_target)
        .decode_utf8()
        .map_or_else(|_| raw_target.to_owned(), |t| t.into_owned());
    Some(Destination {
        target,
        method: with_room(&rest[at + "/method/".len()..]),
    })
}

/// `method` owned, with room for the `/` the invocation puts in front of it.
fn with_room(method: &str) -> String {
    let mut owned = String::with_capacity(method.len() + 1);
    owned.push_str(method);
    owned
}

/// Where `/method/` first starts in `rest`: a scan from slash to slash, which for paths this
/// short costs less than setting up a substring search.
fn method_marker(rest: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = rest[from..].find('/') {
        let at = from + i;
        if rest[at..].starts_with("/method/") {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// The handler of the invoke route and of the router's fallbacks.
pub(crate) async fn handle(State(api): State<ApiState>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let Some(dest) = destination(parts.uri.path(), &parts.headers) else {
        return HttpError(ApiError::new(
            ErrorCode::DirectInvokeNoAppId,
            "failed getting app id either from the URL path or the header dapr-app-id",
        ))
        .into_response();
    };
    let limit = api.max_body_size;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return HttpError(ApiError::new(
            ErrorCode::DirectInvoke,
            format!(
                "failed to invoke, id: {}, err: the request body exceeds the maximum size of {limit} bytes (--max-body-size)",
                dest.target
            ),
        ))
        .into_response();
    }
    // Streamed, never collected: the limit is counted as frames pass.
    let body = Limited::new(body, limit).boxed_unsync();
    let request = InvokeRequest {
        target: dest.target,
        method: dest.method,
        query: parts.uri.query().map(str::to_owned),
        verb: parts.method,
        headers: parts.headers,
        body,
        grpc_proxy: false,
    };
    let span_name = api
        .runtime
        .tracer
        .records(&request.headers)
        .then(|| SpanName(format!("CallLocal/{}/{}", request.target, request.method)));
    let mut resp = match api.runtime.invoke.invoke(request).await {
        Ok(resp) => resp.map(Body::new),
        Err(e) => HttpError(e).into_response(),
    };
    if let Some(name) = span_name {
        resp.extensions_mut().insert(name);
    }
    resp
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn dest(path: &str, headers: &[(&str, &str)]) -> Option<(String, String)> {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        destination(path, &h).map(|d| (d.target, d.method))
    }

    fn some(t: &str, m: &str) -> Option<(String, String)> {
        Some((t.to_owned(), m.to_owned()))
    }

    #[test]
    fn targets_and_methods_like_daprd() {
        assert_eq!(
            dest("/v1.0/invoke/orders/method/api/items", &[]),
            some("orders", "api/items")
        );
        assert_eq!(dest("/v1.0/invoke/orders/method/", &[]), some("orders", ""));
        assert_eq!(
            dest("/v1.0/invoke/http%3A%2F%2Flocalhost%3A8080/method/x", &[]),
            some("http://localhost:8080", "x")
        );
        assert_eq!(
            dest("/v1.0/invoke/http://localhost:8080/method/x", &[]),
            some("http://localhost:8080", "x")
        );
        assert_eq!(dest("/v1.0/invoke/orders", &[]), None);
        assert_eq!(dest("/v1.0/invoke/orders/methods/x", &[]), None);
        assert_eq!(
            dest("/v1.0/invoke/a/b/method/c/method/d", &[]),
            some("a/b", "c/method/d")
        );
        assert_eq!(dest("/v1.0/invoke//method/x", &[]), None);
        assert_eq!(dest("/no/such/route", &[]), None);

        // The header wins over the path; the whole path is the method.
        assert_eq!(
            dest("/v1.0/invoke/a/method/b", &[("dapr-app-id", "c")]),
            some("c", "v1.0/invoke/a/method/b")
        );
        assert_eq!(
            dest("/orders/1", &[("dapr-app-id", "orders")]),
            some("orders", "orders/1")
        );
        // Basic auth: user dapr-app-id (any case), password = target.
        let basic = format!("Basic {}", BASE64.encode("Dapr-App-Id:orders"));
        assert_eq!(
            dest("/orders/1", &[("authorization", &basic)]),
            some("orders", "orders/1")
        );
        let other = format!("Basic {}", BASE64.encode("alice:secret"));
        assert_eq!(dest("/orders/1", &[("authorization", &other)]), None);
    }
}
