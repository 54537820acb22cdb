//! `InvokeService` (deprecated in Dapr in favour of the gRPC proxy, still used by the SDKs).
//!
//! The message becomes an HTTP call handed to [`tandem_runtime::invoke::InvokeService`]:
//! `http_extension.verb` (`NONE` means `POST`) and `querystring`, `content_type`, the body from
//! `data.value`, and the caller's metadata as headers (gRPC's own and binary `-bin` entries
//! left out). The answer comes back as daprd shapes it for an HTTP callee: `data.value` holds the
//! body, `content_type` its type, the response headers become header metadata (standard HTTP
//! headers prefixed `dapr-`), and `dapr-http-status` carries the status. A non-2xx status is a
//! gRPC error mapped from the HTTP status (§3.4) with an `ErrorInfo` holding the body's start.

use bytes::Bytes;
use dapr::dapr::proto::common::v1 as common;
use dapr::dapr::proto::runtime::v1 as rt;
use http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use http_body_util::{BodyExt, Limited};
use tandem_runtime::app_channel::full_body;
use tandem_runtime::invoke::{AppGrpcStatus, InvokeRequest};
use tandem_runtime::trace::SpanName;
use tandem_runtime::{ApiError, ErrorCode, Runtime};
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Response, Status};

use super::error::{http_status_error, to_status};

/// `common.v1.HTTPExtension.Verb` as an HTTP method.
fn verb(ext: Option<&common::HttpExtension>) -> Method {
    match ext.map_or(0, |e| e.verb) {
        1 => Method::GET,
        2 => Method::HEAD,
        4 => Method::PUT,
        5 => Method::DELETE,
        6 => Method::CONNECT,
        7 => Method::OPTIONS,
        8 => Method::TRACE,
        9 => Method::PATCH,
        _ => Method::POST,
    }
}

/// The caller's metadata as request headers: gRPC transport entries and binary ones removed.
fn request_headers(metadata: MetadataMap, content_type: &str) -> HeaderMap {
    let incoming = metadata.into_headers();
    let mut headers = HeaderMap::with_capacity(incoming.len());
    let mut current: Option<HeaderName> = None;
    for (name, value) in incoming {
        if name.is_some() {
            current = name;
        }
        let Some(name) = &current else { continue };
        let n = name.as_str();
        if n == "content-type" || n == "te" || n.starts_with("grpc-") || n.ends_with("-bin") {
            continue;
        }
        headers.append(name.clone(), value);
    }
    if let Ok(v) = HeaderValue::from_str(content_type)
        && !content_type.is_empty()
    {
        headers.insert(header::CONTENT_TYPE, v);
    }
    headers
}

/// Headers grpc-gateway (and so daprd) treats as standard HTTP headers travel as
/// `dapr-<name>` metadata; the prefixed names are static, so nothing is formatted per call.
macro_rules! permanent_headers {
    ($($name:literal),* $(,)?) => {
        fn dapr_prefixed(name: &str) -> Option<&'static str> {
            match name {
                $($name => Some(concat!("dapr-", $name)),)*
                _ => None,
            }
        }
    };
}

permanent_headers!(
    "accept",
    "accept-charset",
    "accept-language",
    "accept-ranges",
    "age",
    "authorization",
    "cache-control",
    "content-type",
    "content-disposition",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-range",
    "date",
    "expect",
    "expires",
    "forwarded",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "link",
    "location",
    "max-forwards",
    "origin",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "refresh",
    "retry-after",
    "server",
    "set-cookie",
    "strict-transport-security",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "vary",
    "via",
    "warning",
    "www-authenticate",
);

/// The callee's response headers as gRPC header metadata, plus `dapr-http-status`.
fn response_metadata(headers: &HeaderMap, status: u16) -> MetadataMap {
    let mut out = HeaderMap::with_capacity(headers.len() + 1);
    for (name, value) in headers {
        let n = name.as_str();
        if n.ends_with("-bin") || n.starts_with("grpc-") {
            continue;
        }
        let name = match dapr_prefixed(n) {
            Some(prefixed) => HeaderName::from_static(prefixed),
            None => name.clone(),
        };
        out.append(name, value.clone());
    }
    out.insert(
        HeaderName::from_static("dapr-http-status"),
        HeaderValue::from(status),
    );
    MetadataMap::from_headers(out)
}

/// `InvokeService`.
pub(super) async fn invoke(
    rt: &Runtime,
    max_body_size: usize,
    req: Request<rt::InvokeServiceRequest>,
) -> Result<Response<common::InvokeResponse>, Status> {
    let (metadata, _, req) = req.into_parts();
    let msg = req.message.unwrap_or_default();
    let headers = request_headers(metadata, &msg.content_type);
    let verb = verb(msg.http_extension.as_ref());
    let query = msg
        .http_extension
        .map(|e| e.querystring)
        .filter(|q| !q.is_empty());
    let body = full_body(Bytes::from(msg.data.map(|d| d.value).unwrap_or_default()));
    let target = req.id;
    let span_name = rt
        .tracer
        .records(&headers)
        .then(|| SpanName(format!("CallLocal/{target}/{}", msg.method)));
    let request = InvokeRequest {
        target: target.clone(),
        method: msg.method,
        query,
        verb,
        headers,
        body,
        grpc_proxy: false,
    };
    let resp = rt.invoke.invoke(request).await.map_err(to_status)?;
    let (parts, body) = resp.into_parts();
    if let Some(st) = parts.extensions.get::<AppGrpcStatus>() {
        // A gRPC app's error comes back as the app sent it.
        return Err(Status::new(Code::from(st.code), st.message.clone()));
    }
    let body = Limited::new(body, max_body_size)
        .collect()
        .await
        .map_err(|e| {
            to_status(ApiError::new(
                ErrorCode::DirectInvoke,
                format!("failed to invoke, id: {target}, err: reading the answer: {e}"),
            ))
        })?
        .to_bytes();
    let status = parts.status.as_u16();
    let metadata = response_metadata(&parts.headers, status);
    if !parts.status.is_success() {
        return Err(http_status_error(
            status,
            &String::from_utf8_lossy(&body),
            metadata,
        ));
    }
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mut response = Response::new(common::InvokeResponse {
        data: Some(prost_types::Any {
            type_url: String::new(),
            value: body.into(),
        }),
        content_type,
    });
    *response.metadata_mut() = metadata;
    if let Some(name) = span_name {
        response.extensions_mut().insert(name);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_default_to_post() {
        assert_eq!(verb(None), Method::POST);
        let get = common::HttpExtension {
            verb: 1,
            querystring: String::new(),
        };
        assert_eq!(verb(Some(&get)), Method::GET);
    }

    #[test]
    fn headers_cross_like_daprd() {
        let mut md = MetadataMap::new();
        md.insert("content-type", "application/grpc".parse().unwrap());
        md.insert("grpc-timeout", "1S".parse().unwrap());
        md.insert("x-custom", "kept".parse().unwrap());
        let h = request_headers(md, "text/plain");
        assert_eq!(h["content-type"], "text/plain");
        assert_eq!(h["x-custom"], "kept");
        assert!(h.get("grpc-timeout").is_none());

        let mut resp = HeaderMap::new();
        resp.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        resp.insert("x-app", HeaderValue::from_static("a"));
        let md = response_metadata(&resp, 201).into_headers();
        assert_eq!(md["dapr-content-type"], "text/plain");
        assert_eq!(md["x-app"], "a");
        assert_eq!(md["dapr-http-status"], "201");
    }
}
