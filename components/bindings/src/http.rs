//! `bindings.http`: calls `url` (HTTP or HTTPS, system root certificates).
//!
//! Operations `create` (POST), `get`, `head`, `post`, `put`, `patch`, `delete`, `options`,
//! `trace`. Request metadata `path` is appended to the URL; metadata keys starting with an
//! upper-case letter are sent as headers (`Content-Type` and `Accept` default to JSON);
//! `traceparent`, `tracestate` and `baggage` are propagated; `errorIfNot2XX` (default `true`,
//! also a component setting) turns a non-2xx answer into an error. The answer's body is the
//! response data, with metadata `statusCode`, `status` and every response header.
//! Component metadata: `url` (required), `responseTimeout`, `maxResponseBodySize` (default
//! `100Mi`), `securityToken` with `securityTokenHeader`. Client certificates (`MTLS*`) are not
//! supported yet and are refused rather than ignored.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tandem_components::bindings::{InvokeRequest, InvokeResponse, OutputBinding};
use tandem_components::metadata::parse_bool;
use tandem_components::{Error, Metadata, Result};

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A `bindings.http` component.
pub struct HttpBinding {
    url: String,
    client: HttpsClient,
    timeout: Option<Duration>,
    max_body: usize,
    token: Option<(HeaderName, HeaderValue)>,
    error_if_not_2xx: bool,
}

impl std::fmt::Debug for HttpBinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpBinding")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// Parses a Kubernetes-style quantity of bytes (`100Mi`, `1G`, `512`).
fn byte_size(text: &str) -> Option<usize> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let n: usize = t[..split].parse().ok()?;
    let mult: usize = match &t[split..] {
        "" => 1,
        "k" | "K" => 1000,
        "Ki" => 1 << 10,
        "M" => 1_000_000,
        "Mi" => 1 << 20,
        "G" => 1_000_000_000,
        "Gi" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

impl HttpBinding {
    /// Reads the component metadata.
    pub async fn build(meta: &Metadata) -> Result<Self> {
        let url = meta
            .get("url")
            .filter(|u| !u.trim().is_empty())
            .ok_or_else(|| Error::invalid_metadata("url", "url is required"))?
            .trim()
            .to_owned();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(Error::invalid_metadata(
                "url",
                "expected an http:// or https:// URL",
            ));
        }
        for f in ["MTLSRootCA", "MTLSClientCert", "MTLSClientKey"] {
            if meta.get(f).is_some_and(|v| !v.is_empty()) {
                return Err(Error::invalid_metadata(
                    f,
                    "client certificates are not supported by this build of Tandem",
                ));
            }
        }
        let timeout = match meta.get("responseTimeout") {
            Some(_) => Some(meta.duration_or("responseTimeout", Duration::ZERO)?),
            None => None,
        }
        .filter(|d| !d.is_zero());
        let max_body = match meta.get("maxResponseBodySize") {
            Some(v) => byte_size(v).ok_or_else(|| {
                Error::invalid_metadata("maxResponseBodySize", "expected a size such as 100Mi")
            })?,
            None => 100 << 20,
        };
        let token = match (meta.get("securityToken"), meta.get("securityTokenHeader")) {
            (Some(t), Some(h)) if !t.is_empty() && !h.is_empty() => Some((
                HeaderName::try_from(h).map_err(|_| {
                    Error::invalid_metadata("securityTokenHeader", "not a valid header name")
                })?,
                HeaderValue::try_from(t).map_err(|_| {
                    Error::invalid_metadata("securityToken", "not a valid header value")
                })?,
            )),
            _ => None,
        };
        let error_if_not_2xx = meta.bool_or("errorIfNot2XX", true)?;
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| Error::backend(format!("cannot load the system root certificates: {e}")))?
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        Ok(Self {
            url,
            client,
            timeout,
            max_body,
            token,
            error_if_not_2xx,
        })
    }
}

/// `content-type` → `Content-Type`, as Go names response headers.
fn canonical(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut c = part.chars();
            match c.next() {
                Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join("-")
}

#[async_trait]
impl OutputBinding for HttpBinding {
    fn operations(&self) -> &'static [&'static str] {
        &[
            "create", "get", "head", "post", "put", "patch", "delete", "options", "trace",
        ]
    }

    async fn invoke(&self, req: InvokeRequest) -> Result<InvokeResponse> {
        let mut url = self.url.clone();
        if let Some(path) = req.metadata.get("path").filter(|p| !p.is_empty()) {
            url = format!(
                "{}/{}",
                url.trim_end_matches('/'),
                path.trim_start_matches('/')
            );
        }
        let error_if_not_2xx = match req.metadata.get("errorIfNot2XX") {
            Some(v) if !v.is_empty() => parse_bool(v).unwrap_or(false),
            _ => self.error_if_not_2xx,
        };
        let method = match req.operation.to_ascii_uppercase().as_str() {
            "CREATE" | "POST" => Method::POST,
            "PUT" => Method::PUT,
            "PATCH" => Method::PATCH,
            "GET" => Method::GET,
            "HEAD" => Method::HEAD,
            "DELETE" => Method::DELETE,
            "OPTIONS" => Method::OPTIONS,
            "TRACE" => Method::TRACE,
            _ => {
                return Err(Error::InvalidRequest(format!(
                    "invalid operation: {}",
                    req.operation
                )));
            }
        };
        let has_body = matches!(method, Method::POST | Method::PUT | Method::PATCH);
        let mut builder = Request::builder().method(method).uri(&url);
        let headers = builder
            .headers_mut()
            .ok_or_else(|| Error::InvalidRequest(format!("invalid url {url}")))?;
        if has_body && !req.metadata.contains_key("Content-Type") {
            headers.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json; charset=utf-8"),
            );
        }
        if !req.metadata.contains_key("Accept") {
            headers.insert(
                http::header::ACCEPT,
                HeaderValue::from_static("application/json; charset=utf-8"),
            );
        }
        if let Some((name, value)) = &self.token {
            headers.insert(name.clone(), value.clone());
        }
        for (k, v) in &req.metadata {
            let header = k.starts_with(|c: char| c.is_ascii_uppercase())
                || matches!(k.as_str(), "traceparent" | "tracestate" | "baggage");
            if !header {
                continue;
            }
            if let (Ok(name), Ok(value)) = (HeaderName::try_from(k), HeaderValue::try_from(v)) {
                headers.insert(name, value);
            }
        }
        let body = if has_body { req.data } else { Bytes::new() };
        let request = builder
            .body(Full::new(body))
            .map_err(|e| Error::InvalidRequest(format!("invalid request to {url}: {e}")))?;
        let call = async {
            let resp = self
                .client
                .request(request)
                .await
                .map_err(|e| Error::backend(format!("calling {url}: {e}")))?;
            let status = resp.status();
            let mut metadata = HashMap::new();
            for (name, value) in resp.headers() {
                let key = canonical(name.as_str());
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                metadata
                    .entry(key)
                    .and_modify(|v: &mut String| {
                        v.push_str(", ");
                        v.push_str(&value);
                    })
                    .or_insert(value);
            }
            metadata.insert("statusCode".to_owned(), status.as_u16().to_string());
            metadata.insert(
                "status".to_owned(),
                format!(
                    "{} {}",
                    status.as_u16(),
                    status.canonical_reason().unwrap_or_default()
                ),
            );
            let data = Limited::new(resp.into_body(), self.max_body)
                .collect()
                .await
                .map_err(|e| Error::backend(format!("reading the answer of {url}: {e}")))?
                .to_bytes();
            if error_if_not_2xx && !status.is_success() {
                return Err(Error::backend(format!(
                    "received status code {}",
                    status.as_u16()
                )));
            }
            Ok(InvokeResponse {
                data: Some(data),
                metadata,
                content_type: None,
            })
        };
        match self.timeout {
            Some(t) => tokio::time::timeout(t, call)
                .await
                .map_err(|_| Error::backend(format!("calling {url}: timed out after {t:?}")))?,
            None => call.await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_header_names() {
        assert_eq!(byte_size("100Mi"), Some(100 << 20));
        assert_eq!(byte_size("512"), Some(512));
        assert_eq!(byte_size("1G"), Some(1_000_000_000));
        assert_eq!(byte_size("lots"), None);
        assert_eq!(canonical("content-type"), "Content-Type");
        assert_eq!(canonical("x-request-id"), "X-Request-Id");
    }

    #[tokio::test]
    async fn metadata_is_checked() {
        let meta = Metadata::new("h", "app");
        assert!(HttpBinding::build(&meta).await.is_err());
        let meta = Metadata::new("h", "app").with("url", "ftp://x");
        assert!(HttpBinding::build(&meta).await.is_err());
        let meta = Metadata::new("h", "app")
            .with("url", "http://127.0.0.1:1")
            .with("MTLSClientCert", "pem");
        assert!(HttpBinding::build(&meta).await.is_err());
        let meta = Metadata::new("h", "app")
            .with("url", "http://127.0.0.1:1")
            .with("maxResponseBodySize", "huge");
        assert!(HttpBinding::build(&meta).await.is_err());
    }
}
