//! `hyper`'s clients: HTTP/1.1 and h2c over hyper-util, and the generated Dapr gRPC client
//! over a hyper-util HTTP/2-only client. The measured paths use the lighter clients of
//! [`crate::raw`]; these serve set-up calls and the comparison rows (`http1-hyper`, `h2c`,
//! `grpc-tonic`).
//!
//! The generated client deliberately avoids tonic's `transport::Channel`: that one puts a
//! buffer task between the caller and the connection, an extra task hop per call that would
//! be counted against the sidecar.

use bytes::Bytes;
use dapr::dapr::proto::runtime::v1::dapr_client::DaprClient;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// HTTP version of a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Http {
    /// HTTP/1.1 keep-alive, one connection per request in flight.
    H1,
    /// HTTP/2 with prior knowledge (h2c), one multiplexed connection.
    H2c,
}

/// A pooled HTTP client.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// The hyper-util client under the gRPC client.
pub type GrpcTransport = Client<HttpConnector, tonic::body::Body>;

/// The Dapr API gRPC client.
pub type Grpc = DaprClient<GrpcTransport>;

fn connector() -> HttpConnector {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    c
}

/// A new HTTP client of `version`.
pub fn http(version: Http) -> HttpClient {
    let mut b = Client::builder(TokioExecutor::new());
    if version == Http::H2c {
        b.http2_only(true);
    }
    b.build(connector())
}

/// A gRPC client of the Dapr API at `127.0.0.1:port`.
pub fn grpc(port: u16) -> Grpc {
    let transport: GrpcTransport = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(connector());
    let origin = format!("http://127.0.0.1:{port}")
        .parse()
        .expect("origin URI");
    DaprClient::with_origin(transport, origin)
}

/// One HTTP exchange: fails unless the status is `expect`; returns the body.
pub async fn call(
    client: &HttpClient,
    method: Method,
    uri: &http::Uri,
    body: Bytes,
    headers: &[(&'static str, &'static str)],
    expect: u16,
) -> Result<Bytes, String> {
    let mut req = Request::builder().method(method).uri(uri.clone());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
    let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if status != expect {
        return Err(format!(
            "{uri}: status {status} (expected {expect}): {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ));
    }
    Ok(body)
}

/// A URI on `127.0.0.1:port`.
pub fn uri(port: u16, path: &str) -> http::Uri {
    format!("http://127.0.0.1:{port}{path}")
        .parse()
        .expect("valid URI")
}
